"""segclip: neuron-head pairs of CLIP-ResNet, for interpretation and training-free segmentation."""
