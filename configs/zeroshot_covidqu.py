"""Stage 2 on COVID-QU-Ex chest X-rays (or the phantom layout of `mzs make-phantoms --kind xray`):
the lungs from a text prompt, one PNG case per image (id `<class>/<name>`, file `<class>__<name>`).

    mzs segment --config configs/zeroshot_covidqu.py --workdir runs/seg_covidqu \
        --config.clip_workdir=runs/clip --config.data.path=DATA/COVID-QU-Ex [--config.data.n=200]
The masks (`masks/<class>__<name>_lungs.png`) and `images/` are the input of
`configs/weak_covidqu.py`; `data.task=infection` segments the infection masks instead.
"""

from mzs_jax.pipeline.zeroshot import default_config


def get_config(arg=None):
    c = default_config()
    c.dataset = "covidqu"
    c.data.source, c.data.split, c.data.task, c.data.n = "covidqu", "test", "lung", 0
    # DPFEM trains on unlabelled maps of 500 training-split images, never on the scored ones.
    c.dpfem.train_data.split, c.dpfem.train_data.n = "train", 500
    c.prompts = {"lungs": "frontal chest radiograph showing both lungs"}
    c.labels = {"lungs": 1}  # the lung (or infection) mask is binary
    c.saliency.method = arg or "gscorecam"
    c.saliency.layer, c.saliency.point = -1, "norm1"  # see docs/zeroshot.md (norm2 has no gradient)
    c.dpfem.data.num_threads, c.dpfem.data.prefetch = 1, 2
    c.segmenter.name = "grabcut"
    return c
