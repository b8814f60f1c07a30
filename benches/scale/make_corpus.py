# benches/scale: writes N seeded synthetic documents with annotations as `trainyard import` JSONL (streamed).
# Two sources: "mail" annotated for spam only, "reviews" for positive_sentiment only (each label is
# masked on the other source). 1-3 annotators a document with some disagreement, ~15% unannotated.
import random, sys
from pathlib import Path

n, out, vocab_file = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rng = random.Random(20261206)
words = sorted({w for w in vocab_file.read_text().split() if w.isalpha() and w.isascii() and len(w) >= 3})
SIGNAL = {
    ("mail", True): "free winner offer prize click money urgent cash deal credit bonus limited".split(),
    ("mail", False): "meeting report schedule project team agenda invoice budget update lunch".split(),
    ("reviews", True): "great excellent wonderful loved amazing best enjoyed brilliant superb".split(),
    ("reviews", False): "boring terrible awful worst disappointing waste poor dull mediocre".split(),
}
LABEL = {"mail": "spam", "reviews": "positive_sentiment"}
ANNOTATORS = ["ann", "bob", "cho", "dev", "eli"]
choices, randint, rand = rng.choices, rng.randint, rng.random

with out.open("w", buffering=1 << 20) as f:
    for i in range(n):
        source = "mail" if i % 2 == 0 else "reviews"
        truth = rand() < 0.35
        k = randint(10, 40)
        body = choices(words, k=k - 3) + choices(SIGNAL[(source, truth)], k=3)
        rng.shuffle(body)
        t = randint(3, min(6, k - 4))
        tags = choices(words, k=randint(0, 3))
        title, desc = " ".join(body[:t]), " ".join(body[t:k - len(tags)])
        label = LABEL[source]
        anns = ""
        if rand() >= 0.15:
            seen = truth if rand() >= 0.03 else not truth  # a few systematic mislabels (suspects)
            votes = []
            for a in rng.sample(ANNOTATORS, choices((1, 2, 3), (5, 3, 2))[0]):
                v = seen if rand() >= 0.08 else not seen  # individual disagreement
                votes.append('{"annotator":"%s","labels":{"%s":%s},"annotated_at":"2026-01-%02dT%02d:%02d:00Z"}'
                             % (a, label, "true" if v else "false", 1 + i % 28, i % 24, i % 60))
            anns = ',"annotations":[' + ",".join(votes) + "]"
        tag_json = ",".join('"%s"' % x for x in tags)
        f.write('{"source":"%s","external_id":"%s-%08d","title":"%s","description":"%s","tags":[%s]%s}\n'
                % (source, source, i, title, desc, tag_json, anns))
