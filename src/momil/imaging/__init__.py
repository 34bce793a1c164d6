"""From images to instances: fields and tiles, the ViT backbone, DINO / DINOv2 pretraining, extraction,
segmentation, and the linear probe of features."""
