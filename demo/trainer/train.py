"""Train a small classifier on scikit-learn's bundled digits data set and report its accuracy.

The metrics go to $CALIBAN_OUTPUT_DIR/metrics.json, where `caliban results` reads them.
"""

import argparse
import json
import os

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularization strength")
    parser.add_argument("--max_iter", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=args.seed)
    model = LogisticRegression(C=args.C, max_iter=args.max_iter)
    model.fit(x_train / 16.0, y_train)
    accuracy = model.score(x_test / 16.0, y_test)
    print(f"C={args.C} seed={args.seed} accuracy={accuracy:.4f}")
    out = os.environ.get("CALIBAN_OUTPUT_DIR")
    if out:  # on Vertex AI and GKE the folder is a prefix in a bucket: made on first use
        os.makedirs(out, exist_ok=True)
        metrics = {
            "accuracy": round(accuracy, 4),
            "train_accuracy": round(model.score(x_train / 16.0, y_train), 4),
        }
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f)


if __name__ == "__main__":
    main()
