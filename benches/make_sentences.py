# Writes N deterministic pseudo-English sentences (20-40 words each, one per line) as input for the embedding throughput benchmark.
"""Usage: python benches/make_sentences.py [--n 2000] [--seed 42] [--out sentences.txt]

Standard library only. The same --n and --seed always give byte-identical output.
"""

from __future__ import annotations

import argparse
import random
import sys

WORDS = """
a about above across act add after again against age ago agree air all almost alone along already also
always am among an and animal another answer any appear apple are area arm around art as ask at away
baby back bad ball bank base be bear beat beautiful because become bed been before began begin behind
being believe below best better between big bird black blue board boat body book both bottom box boy
bread break bring brother brown build busy but buy by call came can car care carry case cat catch cause
center certain chair chance change child city class clean clear close cold color come common company
complete consider contain continue control cook cool corner correct cost could country course cover cross
cry cut dark day dead deal dear decide deep develop did different direct do doctor does dog done door
down draw dream dress drink drive dry during each early earth east easy eat edge effect egg eight either
else end enough enter even evening ever every example experience explain eye face fact fall family far
farm fast father fear feel feet few field fight figure fill final find fine finger finish fire first fish
five floor flower fly follow food foot for force forest form forward found four free friend from front
full game garden gave general get girl give glass go gold good got great green ground group grow guess
had hair half hand happen happy hard has hat have he head hear heart heavy held help her here high hill
him his history hold home hope horse hot hour house how however huge human hundred idea if important in
inside instead interest into iron is island it its job join just keep kept key kind king knew know land
language large last late laugh law lay lead learn leave left leg less let letter level life light like
line list listen little live long look lost lot love low machine made main make man many map mark market
matter may me mean measure meet member men middle might mile milk mind minute miss money month moon more
morning most mother mountain move much music must my name nation near need never new next night nine no
noise north nose not note nothing notice now number ocean of off offer office often old on once one only
open or order other our out over own page paper part party pass past path pay people perhaps person pick
picture piece place plan plant play please point poor possible power present pretty price problem produce
product program provide pull push put question quick quiet quite rain raise ran reach read ready real
reason receive record red remember rest result return rich ride right river road rock room round rule run
safe said same sat save saw say school science sea season seat second see seem sell send sense sentence
serve set seven several shall shape share she ship shop short should show side sign simple since sing
sister sit six size skin sky sleep slow small smile snow so soft soil some son song soon sound south
space speak special spend spring square stand star start state station stay step still stone stood stop
store story street strong student study such sudden summer sun supply sure surface system table take talk
tall teach team tell ten test than that the their them then there these they thing think third this those
though thought three through time tiny to today together told tomorrow too took top touch toward town
track trade train travel tree trip true try turn two under unit until up upon us use usual valley very
visit voice wait walk wall want war warm was wash watch water wave way we wear weather week weight well
went were west what wheel when where which while white who whole why wide wild will wind window winter
wish with without woman wonder wood word work world would write year yellow yes yet you young your
""".split()

CONNECTORS = {"and", "but", "because", "while", "though", "so", "or"}


def sentence(rng: random.Random) -> str:
    n = rng.randint(20, 40)
    words = [rng.choice(WORDS) for _ in range(n)]
    # A comma now and then before a connector word makes the text look a little more like prose.
    out = []
    for i, w in enumerate(words):
        if i > 3 and w in CONNECTORS and out and not out[-1].endswith(","):
            out[-1] += ","
        out.append(w)
    out[0] = out[0].capitalize()
    return " ".join(out) + rng.choice([".", ".", ".", ".", "?", "!"])


def main() -> int:
    ap = argparse.ArgumentParser(description="Write deterministic pseudo-English sentences, one per line.")
    ap.add_argument("--n", type=int, default=2000, help="number of sentences (default 2000)")
    ap.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    ap.add_argument("--out", default="-", help="output file ('-' for stdout, the default)")
    args = ap.parse_args()
    if args.n < 0:
        ap.error("--n must be >= 0")
    assert len(WORDS) >= 300, len(WORDS)
    rng = random.Random(args.seed)
    lines = "".join(sentence(rng) + "\n" for _ in range(args.n))
    if args.out == "-":
        sys.stdout.write(lines)
    else:
        with open(args.out, "w", encoding="utf-8", newline="\n") as f:
            f.write(lines)
        print(f"wrote {args.n} sentences to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
