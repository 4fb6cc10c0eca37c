"""Train a small classifier on scikit-learn's bundled digits data set and print its accuracy."""

import argparse

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
    print(f"C={args.C} seed={args.seed} accuracy={model.score(x_test / 16.0, y_test):.4f}")


if __name__ == "__main__":
    main()
