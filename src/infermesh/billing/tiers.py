"""Which model tiers an account tier may use (Denarii's "tier exceeded")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infermesh.errors import PaymentRequired

ANY_TIER = "*"
DEFAULT_TIER_ACCESS: dict[str, list[str]] = {
    "free": ["fast"],
    "standard": ["fast", "frontier"],
    "pro": [ANY_TIER],
}


class TierExceeded(PaymentRequired):
    """The account's tier does not include the model's tier."""

    code = "tier_exceeded"


class TierPolicy:
    """Maps an account tier to the model tiers it may use; ``"*"`` means all of them.

    An account tier the policy does not name may use no model tier at all, so a typo in
    the configuration fails closed.
    """

    def __init__(self, access: Mapping[str, Sequence[str]] | None = None) -> None:
        source = DEFAULT_TIER_ACCESS if access is None else access
        self._access = {tier: frozenset(models) for tier, models in source.items()}

    def allows(self, account_tier: str, model_tier: str) -> bool:
        allowed = self._access.get(account_tier, frozenset())
        return ANY_TIER in allowed or model_tier in allowed

    def check(self, account_tier: str, model_id: str, model_tier: str) -> None:
        """Raise :class:`TierExceeded` unless ``account_tier`` may use ``model_tier``."""
        if self.allows(account_tier, model_tier):
            return
        needed = sorted(tier for tier in self._access if self.allows(tier, model_tier))
        upgrade = f" It needs one of: {', '.join(needed)}." if needed else ""
        raise TierExceeded(
            f"Tier exceeded: the model '{model_id}' is in the '{model_tier}' tier, which the "
            f"account's '{account_tier}' tier does not include.{upgrade}",
            param="model",
        )

    def tiers(self) -> dict[str, list[str]]:
        """The policy as configured, for display."""
        return {tier: sorted(models) for tier, models in self._access.items()}
