"""Task texts and the scripted model's answers for the end-to-end tests."""

TEXTS = [
    "🎉🎉 Hello Ada Lovelace, welcome to London!",
    "Crème brûlée at Café Zürich with François.",
    "Bank of America opened an office in America.",
    "東京 is where ソニー has its headquarters.",
    "Paris Hilton flew to Paris.\nThen back to Paris.",
]
ANSWERS = {
    TEXTS[0]: {"label": [{"text": "Ada Lovelace", "label": "Person"}, {"text": "london.", "label": "Location"}],
               "sentiment": "positive", "topics": []},
    TEXTS[1]: {"label": [{"text": "Café Zürich", "label": "Organization"}, {"text": "François", "label": "Person"}],
               "sentiment": "positive", "topics": ["business"]},
    TEXTS[2]: {"label": [{"text": "Bank of America", "label": "Organization"}, {"text": "America", "label": "Location"}],
               "sentiment": "neutral", "topics": ["business"]},
    TEXTS[3]: {"label": [{"text": "東京", "label": "Location"}, {"text": "ソニー", "label": "Organization"}],
               "sentiment": "neutral", "topics": []},
    TEXTS[4]: {"label": [{"text": "Paris Hilton", "label": "Person"}, {"text": "Paris", "label": "Location"},
                         {"text": "Paris", "label": "Location"}], "sentiment": "neutral", "topics": []},
}
