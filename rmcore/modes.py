"""What each training mode trains, written once for training and for the time estimate.

- head: the trunk is frozen and only the reward neuron learns (on cached trunk features);
- lora: low-rank adapters on every linear layer of the trunk, plus the whole reward neuron;
- full: every weight.
"""

from __future__ import annotations

from torch import nn

from rmcore.config import TrainConfig
from rmcore.model import PackedRewardModel, head_of


def setup_mode(config: TrainConfig, classifier: nn.Module) -> tuple[PackedRewardModel, nn.Module]:
    """Freeze or wrap `classifier` for `config.mode`.

    Returns the packed model that runs forward passes and the module whose parameters train: the
    reward neuron alone in head mode (it trains on features, not through the packed model), the
    packed model otherwise.
    """
    if config.mode == "head":
        classifier.requires_grad_(False)
        head = head_of(classifier)
        head.requires_grad_(True)
        return PackedRewardModel(classifier), head
    if config.mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        # The reward neuron ("score") is new, so TaskType.SEQ_CLS trains it fully beside the adapters.
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_scaling_alpha(),
                          lora_dropout=0.0, target_modules="all-linear")
        packed = PackedRewardModel(get_peft_model(classifier, lora))
        return packed, packed
    classifier.requires_grad_(True)
    packed = PackedRewardModel(classifier)
    return packed, packed


def classifier_to_save(config: TrainConfig, packed: PackedRewardModel) -> nn.Module:
    """The plain *ForSequenceClassification module to save: LoRA adapters merged into the weights."""
    from rmcore.model import unwrap_classifier

    if config.mode == "lora":
        return packed.classifier.merge_and_unload()
    return unwrap_classifier(packed.classifier)
