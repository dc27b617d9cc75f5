"""Training the trained reference model: transformers' Phi4MultimodalForCausalLM + PEFT on the
project's synthetic tasks, in three stages as Phi-4-multimodal was trained (the text model; then,
with it frozen, the vision encoder + projector + vision LoRA; then the audio encoder + projections
+ speech LoRA). The only layer that imports torch for writing weights; nothing imports it."""
