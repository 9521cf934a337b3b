"""Learning from reviews: webhook intake rules, the event worker and learner, resync, few-shot selection."""
