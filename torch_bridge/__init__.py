"""Everything that imports torch: the open_clip reference model, gScoreCAM/Grad-CAM, SAM."""
