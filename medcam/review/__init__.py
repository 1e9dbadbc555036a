"""The written review folder: NIfTI/NRRD writers, the 3D Slicer package, previews, montages, atomic folders."""
