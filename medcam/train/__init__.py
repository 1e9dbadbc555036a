"""Training U-Nets and CT classifiers with medcam's readers, under torchrun or in one process."""
