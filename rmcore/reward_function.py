"""Kept so that code written against earlier rmcore keeps working (the README documents this path);
the home of these names is `rmcore.policy.reward_function`."""

from rmcore.policy.reward_function import RewardFunction

__all__ = ["RewardFunction"]
