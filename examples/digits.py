"""The main job: train a small CNN on the scikit-learn digits, compile it, explain it.

Prints the annotated graph and the generated relevance program, and writes ``out/digits.png``:
two samples of each digit, then one row of heatmaps per composite. The code is ``lrpfx/demo.py``
(so that ``lrpfx demo`` runs it from any install); read it as the example.

    python examples/digits.py [--out out/digits.png] [--epochs 30]
"""

from lrpfx.demo import main

if __name__ == "__main__":
    main()
