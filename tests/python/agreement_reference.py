# The reference agreement figures for tests/it/agreement.rs: Krippendorff's alpha (nominal) from
# the `krippendorff` package and each annotator's Cohen's kappa against the others' consensus
# from scikit-learn, for the vote sets of a JSON file (argv[1]); prints them as JSON.
import json
import math
import sys
import warnings
from collections import Counter

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score

warnings.simplefilter("ignore")


def figure(x):
    return None if x is None or math.isnan(x) else float(x)


def alpha(votes):
    documents = sorted({d for d, _, _ in votes})
    annotators = sorted({a for _, a, _ in votes})
    data = np.full((len(annotators), len(documents)), np.nan)
    for d, a, v in votes:
        data[annotators.index(a), documents.index(d)] = v
    try:
        return figure(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    except ValueError:
        # No unit with two values, or one value in the whole domain: undefined.
        return None


def kappas(votes):
    by_document = {}
    for d, a, v in votes:
        by_document.setdefault(d, {})[a] = v
    out = {}
    for annotator in sorted({a for _, a, _ in votes}):
        mine, consensus, documents = [], [], 0
        for cast in by_document.values():
            if annotator not in cast:
                continue
            documents += 1
            others = Counter(v for a, v in cast.items() if a != annotator).most_common()
            if not others or (len(others) > 1 and others[0][1] == others[1][1]):
                continue
            mine.append(cast[annotator])
            consensus.append(others[0][0])
        kappa = figure(cohen_kappa_score(mine, consensus)) if len(mine) >= 2 else None
        out[annotator] = {"documents": documents, "kappa_documents": len(mine), "kappa": kappa}
    return out


cases = json.load(open(sys.argv[1]))
print(json.dumps([{"name": c["name"], "alpha": alpha(c["votes"]), "annotators": kappas(c["votes"])} for c in cases]))
