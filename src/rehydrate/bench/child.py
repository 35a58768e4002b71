"""``python -m rehydrate.bench.child KIND PATH``: one cold start, as JSON."""

import json
import sys

from .baselines import child

if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], sys.argv[2])))
