"""The digit detector and the publishing of any detector.

canvases.py   MNIST digits composited onto canvases, with exact boxes
network.py    the anchor-free single-stage network (YOLOv8's output format)
train.py      training on fresh canvases, ONNX export with a dynamic batch axis
evaluate.py   detections through the serving path, COCO mAP@0.5 (pycocotools)
card.py       the mAP gate and the detector's model card
publish.py    FP32, INT8 and BF16 through the gate into the repository
build.py      the digit detector: data, training, publishing (`python -m offline detector`)
"""

FAMILY = "detector"  # the digit detector's family in the model repository
