"""The classical baselines every task's classifier is measured against, and the scoring of all.

TF-IDF over word 1-2 grams with sublinear tf plus logistic regression (the strong classical
baseline of text classification), and the majority class of the training labels. Scores are
accuracy, macro-F1, per-class precision and recall with a bootstrap 95% interval, and for each
baseline the paired difference to the finetuned model with its interval.
"""

from __future__ import annotations

import numpy as np

from lmcore.evaluate import bootstrap_accuracy, classification_metrics


def tfidf_predictions(train_texts: list[str], train_labels: np.ndarray, test_texts: list[str]) -> np.ndarray:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, fit on the training texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    # min_df=2 drops the long tail of one-off n-grams, unless the training set is so small
    # that it would drop nearly everything.
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2 if len(train_texts) >= 1000 else 1)
    features = vectorizer.fit_transform(train_texts)
    if len(np.unique(train_labels)) < 2:
        return np.full(len(test_texts), train_labels[0])
    classifier = LogisticRegression(C=4.0, max_iter=2000)
    classifier.fit(features, train_labels)
    return classifier.predict(vectorizer.transform(test_texts))


def majority_predictions(train_labels: np.ndarray, num_classes: int, count: int) -> np.ndarray:
    return np.full(count, np.bincount(train_labels, minlength=num_classes).argmax())


def score(
    y_true: np.ndarray, predictions: dict[str, np.ndarray], num_classes: int, samples: int, reference: str = "finetuned"
) -> dict[str, dict]:
    """Each model's metrics with its bootstrap interval; paired differences against `reference`."""
    results = {}
    reference_correct = predictions[reference] == y_true if reference in predictions else None
    for name, predicted in predictions.items():
        correct = predicted == y_true
        entry = {**classification_metrics(y_true, predicted, num_classes), **bootstrap_accuracy(correct, None, samples)}
        if reference_correct is not None and name != reference:
            paired = bootstrap_accuracy(reference_correct, correct, samples)
            entry.update(
                {
                    f"{reference}_minus_this": paired["diff"],
                    "diff_ci_low": paired["diff_ci_low"],
                    "diff_ci_high": paired["diff_ci_high"],
                }
            )
        results[name] = entry
    return results
