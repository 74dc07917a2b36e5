"""The error table: every category has a rule, statuses are HTTP errors, the classes SPEC names."""

from __future__ import annotations

import pytest

from protocol.errors import (
    ERROR_TABLE,
    ArtifactError,
    Category,
    ChunkError,
    EnvelopeError,
    ErrorClass,
    KeysetError,
    ProofError,
    ProtocolError,
)


def test_every_category_has_exactly_one_rule() -> None:
    assert set(ERROR_TABLE) == set(Category)


@pytest.mark.parametrize("category", list(Category), ids=[c.value for c in Category])
def test_rule_is_well_formed(category: Category) -> None:
    rule = ERROR_TABLE[category]
    assert 400 <= rule.status <= 599
    assert isinstance(rule.error_class, ErrorClass)
    assert rule.meaning.strip() and rule.meaning == rule.meaning.strip()
    assert category.value == category.value.lower() and " " not in category.value


def test_unknown_recipient_key_is_retry_after_refresh() -> None:
    assert ERROR_TABLE[Category.UNKNOWN_RECIPIENT_KEY].error_class == ErrorClass.RETRY_AFTER_REFRESH
    refresh = {c for c, r in ERROR_TABLE.items() if r.error_class == ErrorClass.RETRY_AFTER_REFRESH}
    assert refresh == {Category.UNKNOWN_RECIPIENT_KEY}


@pytest.mark.parametrize(
    "category", [Category.UNKNOWN_SIGNING_KEY, Category.NOT_YET_VALID, Category.ATTACHMENTS_INCOMPLETE,
                 Category.RATE_LIMITED, Category.UNAVAILABLE, Category.INSUFFICIENT_STORAGE],
)
def test_retryable(category: Category) -> None:
    assert ERROR_TABLE[category].error_class == ErrorClass.RETRYABLE


@pytest.mark.parametrize(
    "category", [Category.BAD_SIGNATURE, Category.MALFORMED, Category.EXPIRED, Category.WRONG_RECIPIENT,
                 Category.REVOKED_KEY, Category.MSG_ID_CONFLICT, Category.TOO_LARGE, Category.DECRYPTION_FAILED],
)
def test_permanent(category: Category) -> None:
    assert ERROR_TABLE[category].error_class == ErrorClass.PERMANENT


@pytest.mark.parametrize(
    "category,status",
    [(Category.TOO_LARGE, 413), (Category.LENGTH_REQUIRED, 411), (Category.RATE_LIMITED, 429),
     (Category.UNAVAILABLE, 503), (Category.ATTACHMENTS_INCOMPLETE, 409), (Category.MSG_ID_CONFLICT, 409)],
)
def test_statuses_the_http_binding_names(category: Category, status: int) -> None:
    assert ERROR_TABLE[category].status == status


def test_only_5xx_are_retryable() -> None:
    for category, rule in ERROR_TABLE.items():
        if rule.status >= 500:
            assert rule.error_class == ErrorClass.RETRYABLE, category


@pytest.mark.parametrize("cls", [EnvelopeError, ArtifactError, KeysetError, ChunkError, ProofError])
def test_error_tree(cls: type[ProtocolError]) -> None:
    err = cls(Category.EXPIRED, "exp 1 + skew 300 is before now 400")
    assert isinstance(err, ProtocolError) and isinstance(err, Exception)
    assert err.category == Category.EXPIRED and err.detail.startswith("exp 1")
    assert err.rule == ERROR_TABLE[Category.EXPIRED]
    assert str(err) == "expired: exp 1 + skew 300 is before now 400"
