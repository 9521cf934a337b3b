"""The durable store: schema and migrations, events, examples, projects, vectors, claims and cache rows."""
