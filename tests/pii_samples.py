"""Texts with planted personal data (e-mails, phones, IBANs, card numbers, names) for the masking tests
and the detector's recall: each sample is (text, [(value, kind), ...]). The numbers are the published
test values (IBAN examples of the registry, card networks' test numbers), never real people's."""

from __future__ import annotations

EMAILS = ["jane.doe@example.com", "m.garcia+billing@mail.example.org", "support@acme-corp.co.uk",
          "o_brown42@uni.example.edu", "chen.wei@company.example.cn"]
PHONES = ["+44 20 7946 0958", "(212) 555-0187", "+49 30 901820", "+1-415-555-0132", "020 7946 0321",
          "+33 1 42 68 53 00", "212.555.0199"]
IBANS = ["DE89 3704 0044 0532 0130 00", "GB29NWBK60161331926819", "FR14 2004 1010 0505 0001 3M02 606",
         "NL91ABNA0417164300", "ES9121000418450200051332"]
CARDS = ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011 1111 1111 1117",
         "4012888888881881"]
NAMES = ["John Smith", "Maria Garcia", "Olivia Brown", "Aisha Bello", "Liam O'Connor", "Sophie Martin",
         "Wei Zhang", "Priya Patel", "Dr. Okonkwo", "Mrs. Kowalski"]

TEMPLATES = [
    "Please contact {NAME} at {EMAIL} or on {PHONE} about the invoice.",
    "Refund to IBAN {IBAN} for {NAME}; the card {CARD} was charged twice.",
    "{NAME} wrote from {EMAIL}: call me back on {PHONE} before Friday.",
    "Customer {NAME} paid with card {CARD}. Acme Corp will send the receipt to {EMAIL}.",
    "Transfer from {IBAN} failed. {NAME} asked us to phone {PHONE} instead.",
]


def samples() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every value appears at least once; the templates cycle through the lists."""
    pools = {"NAME": NAMES, "EMAIL": EMAILS, "PHONE": PHONES, "IBAN": IBANS, "CARD": CARDS}
    kinds = {"NAME": "PERSON", "EMAIL": "EMAIL", "PHONE": "PHONE", "IBAN": "IBAN", "CARD": "CREDIT_CARD"}
    used = {k: 0 for k in pools}
    out = []
    for i in range(14):
        template = TEMPLATES[i % len(TEMPLATES)]
        values: dict[str, str] = {}
        planted = []
        for key in pools:
            if "{" + key + "}" in template:
                values[key] = pools[key][used[key] % len(pools[key])]
                used[key] += 1
                shown = values[key].split(". ", 1)[-1] if key == "NAME" else values[key]  # a title is not the name
                planted.append((shown, kinds[key]))
        out.append((template.format(**values), planted))
    return out
