"""Token strings and sentinel values shared by the model, the data pipeline and the CLIs."""

SEG_TOKEN = "[SEG]"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"
IMAGE_TOKEN = "<image>"

# Order in which the extra tokens are appended to a base LLaMA vocabulary of size V:
# [SEG] = V, <im_start> = V + 1, <im_end> = V + 2 (the READ/LISA/SESAME layout), <image> = V + 3
# (the per-patch placeholder that transformers' Llava needs; its embedding row is never read).
EXTRA_TOKENS = (SEG_TOKEN, IM_START_TOKEN, IM_END_TOKEN, IMAGE_TOKEN)

IGNORE_INDEX = -100

# CLIP and SAM pixel statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
