"""What each training mode trains, written once for training and for the time estimate.

- head: the trunk is frozen and only the reward neuron learns (on cached trunk features);
- lora: low-rank adapters on every linear layer of the trunk, plus the whole reward neuron;
- full: every weight.

With `trainable_layers` = N, lora and full touch only the top N transformer blocks (lora: adapters
there; full: their weights and the final norm). The blocks below get no gradient, so autograd stops at
the first block that trains and a step costs a forward pass plus N blocks' backward.
"""

from __future__ import annotations

from torch import nn

from rmcore.core.errors import TrainingError
from rmcore.model.reward_model import PackedRewardModel, head_of, unwrap_classifier
from rmcore.training.config import TrainConfig


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
        from peft import LoraConfig, TaskType, get_peft_model  # peft: only LoRA mode needs it (a second to import)

        # The reward neuron ("score") is new, so TaskType.SEQ_CLS trains it fully beside the adapters.
        targets, layers = "all-linear", None
        if config.trainable_layers:
            blocks = decoder_blocks(classifier)
            layers = list(range(len(blocks) - _checked_top(config, len(blocks)), len(blocks)))
            # peft takes a block range only with the layers' names listed (all linear layers of a block)
            targets = sorted({name.rsplit(".", 1)[-1] for name, module in blocks[-1].named_modules()
                              if isinstance(module, nn.Linear)})
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_scaling_alpha(),
                          lora_dropout=0.0, target_modules=targets, layers_to_transform=layers)
        packed = PackedRewardModel(get_peft_model(classifier, lora))
        return packed, packed
    if config.trainable_layers:
        _train_top_blocks(classifier, config)
    else:
        classifier.requires_grad_(True)
    packed = PackedRewardModel(classifier)
    return packed, packed


def decoder_blocks(classifier: nn.Module) -> nn.ModuleList:
    """The trunk's transformer blocks, bottom to top (`model.layers` in Llama, Qwen, Mistral and kin)."""
    trunk = getattr(unwrap_classifier(classifier), "model", None)
    blocks = getattr(trunk, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TrainingError("trainable layers: this model's transformer blocks were not found (model.layers); "
                            "train all layers (trainable layers 0)")
    return blocks


def _checked_top(config: TrainConfig, total: int) -> int:
    if config.trainable_layers > total:
        raise TrainingError(f"trainable layers {config.trainable_layers} is more than the model's {total} blocks")
    return config.trainable_layers


def _train_top_blocks(classifier: nn.Module, config: TrainConfig) -> None:
    """Full mode on the top blocks only: their weights, the final norm and the reward neuron train."""
    blocks = decoder_blocks(classifier)
    top = _checked_top(config, len(blocks))
    classifier.requires_grad_(False)
    for block in blocks[len(blocks) - top:]:
        block.requires_grad_(True)
    norm = getattr(unwrap_classifier(classifier).model, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    head_of(classifier).requires_grad_(True)


def classifier_to_save(config: TrainConfig, packed: PackedRewardModel) -> nn.Module:
    """The plain *ForSequenceClassification module to save: LoRA adapters merged into the weights."""
    if config.mode == "lora":
        return packed.classifier.merge_and_unload()
    return unwrap_classifier(packed.classifier)
