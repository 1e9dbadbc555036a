"""Core engine speed: gradient CAMs vs the forward pass and vs captum / pytorch-grad-cam.

Targets (issue 2): medcam Grad-CAM on ResNet-50 no slower than captum's LayerGradCam;
Seg-HiRes-Grad CAM on a 3D MONAI UNet at 96^3 and 128x256x256 at most 1.6x the
forward-only time of the same model and input. Seeded random weights, 2 CPU threads,
median of repeated runs, all measured in one run.

    python benchmarks/bench_core.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from timing import measure


def unet3d() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1).eval()


def classifier_rows(repeats: int) -> list[tuple[str, float]]:
    import torchvision
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import medcam

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    def forward() -> None:
        with torch.no_grad():
            model(x)

    captum = LayerGradCam(model, model.layer4)

    def captum_gradcam() -> None:
        attr = captum.attribute(x, target=3, relu_attributions=True)
        torch.nn.functional.interpolate(attr, size=(224, 224), mode="bilinear")

    def grad_cam_lib() -> None:
        with GradCAM(model=model, target_layers=[model.layer4]) as cam:
            cam(input_tensor=x, targets=[ClassifierOutputTarget(3)])
        model.zero_grad(set_to_none=True)

    def ours() -> None:
        medcam.explain(model, x, "gradcam", target=3, layers="layer4")

    jobs = [
        ("forward only (no grad)", forward),
        ("captum LayerGradCam + upsample", captum_gradcam),
        ("pytorch-grad-cam GradCAM", grad_cam_lib),
        ("medcam gradcam", ours),
    ]
    return [(name, wall) for name, (wall, _) in measure(dict(jobs), repeats).items()]


def segmentation_rows(shape: tuple[int, int, int], repeats: int) -> list[tuple[str, float]]:
    import medcam

    model = unet3d()
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    bottleneck = next(lv.path for lv in medcam.discover_levels(model) if lv.name == "bottleneck")
    target = medcam.SegmentationTarget(1, pixels="image")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def full_backward() -> None:
        # what a library calling loss.backward() pays: gradients for every parameter
        logits = model(x)
        logits[:, 1].sum().backward()
        model.zero_grad(set_to_none=True)

    def ours() -> None:
        medcam.explain(model, x, "hirescam", target=target, layers=bottleneck)

    jobs = [
        ("forward only (no grad)", forward),
        ("forward + full backward()", full_backward),
        ("medcam Seg-HiRes-Grad CAM (bottleneck)", ours),
    ]
    return [(name, wall) for name, (wall, _) in measure(dict(jobs), repeats).items()]


def table(title: str, rows: list[tuple[str, float]], reference: float) -> str:
    lines = [f"### {title}", "", "| what | median s | x forward |", "|---|---:|---:|"]
    lines += [f"| {name} | {t:.3f} | {t / reference:.2f} |" for name, t in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip 128x256x256")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats} interleaved runs\n")
    rows = classifier_rows(repeats)
    print(table("ResNet-50, 1x3x224x224, layer4, class 3", rows, rows[0][1]))
    shapes = [(96, 96, 96)] if args.quick else [(96, 96, 96), (128, 256, 256)]
    for shape in shapes:
        rows = segmentation_rows(shape, repeats if shape[0] == 96 else max(3, repeats // 2))
        print()
        print(table(f"MONAI UNet 3D (16-32-64-128, 4 classes), 1x1x{'x'.join(map(str, shape))}", rows, rows[0][1]))


if __name__ == "__main__":
    main()
