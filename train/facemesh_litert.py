"""MediaPipe FaceMesh's tracking graph, run on LiteRT: the same two models, the same geometry.

Why: scoring spends most of its time in FaceMesh. MediaPipe's graph takes ~2.3-3 ms of CPU per
frame here, of which the landmark network is ~1.2 ms; the rest is the graph's own work (packets,
threads handing every frame over, protobuf results). Running the two .tflite models of the mediapipe
wheel with LiteRT (`ai-edge-litert`, Apache-2.0, Google's TensorFlow Lite runtime on PyPI), one
thread, and the graph's few geometric steps in numpy / OpenCV gives the same landmarks within a
fraction of a pixel (per clip, the median frame is 0.015-0.36 px off on 58 real clips:
bench/facemesh_runtimes.py; tests/test_facemesh_litert.py) at ~1.5 ms of CPU per frame. Not
bit-identical: the two round differently, which moves the judge's logits by ~0.03 (median), as
another BLAS would; caches are therefore not keyed by the runtime.

What is reproduced, from `mediapipe/modules/face_landmark/face_landmark_front_cpu` as mediapipe
0.10.21 expands it (`FaceMesh(...)._graph.text_config`), one face, static_image_mode off:
- no face tracked from the previous frame: BlazeFace short range (128x128 letterboxed input in
  [-1, 1], 896 SSD anchors, score >= 0.5, weighted NMS at IoU 0.3), the best detection's box turned
  by its eye keypoints, squared on its long side and scaled 1.5x: the ROI;
- otherwise the ROI is the previous frame's landmarks' box, turned by the eye corners 33 / 263,
  squared and scaled 1.5x;
- the ROI is warped to 192x192 (bilinear, replicated border, values in [0, 1]), the landmark
  network gives 468 points and a face score; score < 0.5 drops the face (the next frame detects
  again); the points are projected back through the ROI.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

EYE_CORNERS = (33, 263)  # FaceMesh's outer eye corners: they turn the tracked ROI (and train.landmarks' face frame)

LANDMARK_MODEL = "modules/face_landmark/face_landmark.tflite"
DETECTOR_MODEL = "modules/face_detection/face_detection_short_range.tflite"
INSTALL_HINT = "pip install ai-edge-litert (the Makefile does this)"

_LANDMARK_SIZE = 192
_DETECTOR_SIZE = 128
_MIN_DETECTION_SCORE = 0.5
_MIN_PRESENCE_SCORE = 0.5
_NMS_IOU = 0.3
_ROI_SCALE = 1.5
_DETECTION_EYES = (0, 1)   # BlazeFace keypoints: the two eyes


def available() -> bool:
    """Whether LiteRT and MediaPipe's model files are installed."""
    try:
        _model_dir()
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def _model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mediapipe is not installed (its wheel holds the FaceMesh models)")
    return Path(list(spec.submodule_search_locations)[0])


def _interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ImportError(f"FaceMesh on LiteRT needs ai-edge-litert: {INSTALL_HINT} ({err})") from None

    it = Interpreter(model_path=str(path), num_threads=1)  # one worker per core does the parallelism
    it.allocate_tensors()
    return it


def _ssd_anchors() -> np.ndarray:
    """(896, 2) anchor centres of BlazeFace short range (SsdAnchorsCalculator: strides 8, 16, 16, 16;
    two anchors per cell per layer, fixed size 1; layers of one stride share the grid)."""
    strides = (8, 16, 16, 16)
    out = []
    layer = 0
    while layer < len(strides):
        same = layer
        while same < len(strides) and strides[same] == strides[layer]:
            same += 1
        per_cell = 2 * (same - layer)
        side = math.ceil(_DETECTOR_SIZE / strides[layer])
        for y in range(side):
            for x in range(side):
                out.extend([((x + 0.5) / side, (y + 0.5) / side)] * per_cell)
        layer = same
    return np.asarray(out, dtype=np.float64)


def _normalize_radians(angle: float) -> float:
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def _roi(box: tuple[float, float, float, float], eyes: np.ndarray, width: int, height: int
         ) -> tuple[float, float, float, float, float]:
    """A normalised (xmin, ymin, w, h) box and two eye points (normalised) -> the ROI (x_center,
    y_center, w, h normalised, rotation): DetectionsToRectsCalculator then RectTransformationCalculator
    (square on the long side in pixels, scaled 1.5x)."""
    xmin, ymin, w, h = box
    (x0, y0), (x1, y1) = eyes[0] * (width, height), eyes[1] * (width, height)
    rotation = _normalize_radians(-math.atan2(-(y1 - y0), x1 - x0))
    long_side = max(w * width, h * height)
    return (xmin + w / 2, ymin + h / 2, long_side / width * _ROI_SCALE, long_side / height * _ROI_SCALE,
            rotation)


def _warp(image: np.ndarray, roi_px: tuple[float, float, float, float, float], size: int,
          border: int) -> np.ndarray:
    """The rotated ROI (pixels: cx, cy, w, h, rotation) of an RGB uint8 image as size x size uint8,
    bilinear: ImageToTensorCalculator's OpenCV path (boxPoints' corners to the square's). MediaPipe
    warps with a perspective transform; a rotated rectangle to a square is affine, and warpAffine
    takes half the time with landmarks as close to the graph's (checked on real clips)."""
    import cv2

    cx, cy, w, h, rotation = roi_px
    src = cv2.boxPoints(((cx, cy), (w, h), rotation * 180.0 / math.pi)).astype(np.float32)
    dst = np.float32([[0, size], [0, 0], [size, 0]])          # bottom-left, top-left, top-right
    matrix = cv2.getAffineTransform(src[:3], dst)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)


class FaceMeshTracker:
    """One face's 468 landmarks frame after frame, as MediaPipe's FaceMesh graph gives them."""

    def __init__(self) -> None:
        base = _model_dir()
        self._mesh = _interpreter(base / LANDMARK_MODEL)
        self._detector = _interpreter(base / DETECTOR_MODEL)
        self._mesh_in = self._mesh.get_input_details()[0]["index"]
        # the landmark tensor has 1404 values, the face flag 1
        outs = sorted(self._mesh.get_output_details(), key=lambda d: -int(np.prod(d["shape"])))
        self._mesh_points, self._mesh_flag = (d["index"] for d in outs)
        self._det_in = self._detector.get_input_details()[0]["index"]
        det_outs = {d["name"]: d["index"] for d in self._detector.get_output_details()}
        self._det_boxes, self._det_scores = det_outs["regressors"], det_outs["classificators"]
        self._anchors = _ssd_anchors()
        self._mesh_input_buffer = self._mesh.tensor(self._mesh_in)  # -> a view of the input: written in place
        self._prev_roi: tuple[float, float, float, float, float] | None = None

    def reset(self) -> None:
        """Forget the tracked face: the next frame starts with a detection (a new clip)."""
        self._prev_roi = None

    def process(self, image: np.ndarray) -> np.ndarray | None:
        """RGB uint8 (H, W, 3) -> (468, 2) landmarks normalised to the image (x / W, y / H), or None."""
        roi = self._prev_roi if self._prev_roi is not None else self._detect(image)
        if roi is None:
            return None
        points, self._prev_roi = self.step(image, roi)
        return points

    def step(self, image: np.ndarray, roi: tuple[float, float, float, float, float]
             ) -> tuple[np.ndarray | None, tuple[float, float, float, float, float] | None]:
        """One tracking step from `roi`: (468, 2) normalised landmarks or None (no face there), and
        the ROI for the next frame (None when the face was lost)."""
        height, width = image.shape[:2]
        points = self._landmarks(image, roi)
        if points is None:
            return None, None
        columns = points.T.copy()  # x and y rows: a reduction along rows is ~8x faster than along axis 0
        xmin, ymin = columns.min(axis=1)
        xmax, ymax = columns.max(axis=1)
        return points, _roi((xmin, ymin, xmax - xmin, ymax - ymin), points[list(EYE_CORNERS)], width, height)

    def _landmarks(self, image: np.ndarray, roi: tuple[float, float, float, float, float]) -> np.ndarray | None:
        import cv2

        height, width = image.shape[:2]
        cx, cy, w, h, rotation = roi
        crop = _warp(image, (cx * width, cy * height, w * width, h * height, rotation), _LANDMARK_SIZE,
                     cv2.BORDER_REPLICATE)
        np.multiply(crop, np.float32(1 / 255), out=self._mesh_input_buffer()[0])  # no view held across invoke
        self._mesh.invoke()
        flag = float(self._mesh.get_tensor(self._mesh_flag).reshape(-1)[0])
        # sigmoid(flag) >= the presence score, compared as logits (no overflow; NaN is no face)
        if not flag >= math.log(_MIN_PRESENCE_SCORE / (1 - _MIN_PRESENCE_SCORE)):
            return None
        raw = self._mesh.get_tensor(self._mesh_points).reshape(-1, 3)[:, :2].astype(np.float64)
        local = raw / _LANDMARK_SIZE - 0.5           # the crop's centre as origin
        # turned by the ROI's rotation, scaled by its (normalised) size, moved to its centre
        cos, sin = math.cos(rotation), math.sin(rotation)
        return local @ np.array([[cos * w, sin * h], [-sin * w, cos * h]]) + (cx, cy)

    def _detect(self, image: np.ndarray) -> tuple[float, float, float, float, float] | None:
        """BlazeFace's best face as an ROI, or None."""
        found = self._detections(image)
        if found is None:
            return None
        boxes, keypoints, scores = found
        return self._image_roi(*_weighted_nms_best(boxes, keypoints, scores), image)

    def detect_all(self, image: np.ndarray, max_faces: int) -> list[tuple[float, float, float, float, float]]:
        """The ROIs of up to `max_faces` faces BlazeFace finds, best first (the first is _detect's)."""
        found = self._detections(image)
        if found is None:
            return []
        return [self._image_roi(box, eyes, image) for box, eyes in _weighted_nms(*found, max_faces)]

    def detect_tiles(self, image: np.ndarray, max_faces: int, grid: int = 3
                     ) -> list[tuple[float, float, float, float, float]]:
        """detect_all on each tile of a grid x grid of overlapping tiles (each 1.6 / grid of the side),
        as ROIs of the whole image: BlazeFace short range sees the whole frame at 128 px, where the
        faces of a wide shot or a split screen are a few pixels; a tile shows them `grid` / 1.6 times
        larger. The same face may come from two tiles."""
        height, width = image.shape[:2]
        share = min(1.0, 1.6 / grid)
        th, tw = max(1, int(share * height)), max(1, int(share * width))
        out = []
        for gy in range(grid):
            for gx in range(grid):
                x0 = int(gx * (width - tw) / max(grid - 1, 1))
                y0 = int(gy * (height - th) / max(grid - 1, 1))
                for cx, cy, w, h, rotation in self.detect_all(np.ascontiguousarray(image[y0:y0 + th, x0:x0 + tw]),
                                                              max_faces):
                    out.append(((cx * tw + x0) / width, (cy * th + y0) / height, w * tw / width, h * th / height,
                                rotation))
        return out

    def _detections(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """BlazeFace's (boxes, keypoints, scores) above the detection score, in letterbox units, or None."""
        import cv2

        height, width = image.shape[:2]
        side = float(max(width, height))  # the letterbox: the whole image centred in a square
        tensor = _warp(image, (width / 2, height / 2, side, side, 0.0), _DETECTOR_SIZE, cv2.BORDER_CONSTANT)
        self._detector.set_tensor(self._det_in, (tensor.astype(np.float32) * np.float32(2 / 255) - 1)[None])
        self._detector.invoke()
        raw = self._detector.get_tensor(self._det_boxes)[0].astype(np.float64)      # (896, 16)
        logits = self._detector.get_tensor(self._det_scores)[0, :, 0].astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100, 100)))
        keep = np.flatnonzero(scores >= _MIN_DETECTION_SCORE)
        if not len(keep):
            return None
        anchors = self._anchors[keep]
        r = raw[keep] / _DETECTOR_SIZE
        centre = r[:, :2] + anchors
        half = r[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)           # xmin, ymin, xmax, ymax
        keypoints = r[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        return boxes, keypoints, scores[keep]

    @staticmethod
    def _image_roi(box: np.ndarray, eyes: np.ndarray, image: np.ndarray) -> tuple[float, float, float, float, float]:
        """A letterbox detection (box, eyes) as the ROI in image coordinates."""
        height, width = image.shape[:2]
        side = float(max(width, height))
        # tensor -> image coordinates (DetectionProjectionCalculator with the letterbox's matrix)
        sx, sy = side / width, side / height
        to_image = np.array([sx, sy])
        offset = np.array([(1 - sx) / 2, (1 - sy) / 2])
        lo, hi = box[:2] * to_image + offset, box[2:] * to_image + offset
        eyes = eyes * to_image + offset
        return _roi((lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]), eyes, width, height)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = _area(box) + _area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _weighted_nms_best(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The first detection of MediaPipe's weighted non-maximum suppression (the graph keeps one
    face): the best-scoring box, its box and keypoints averaged, weighted by score, with every box
    that overlaps it by IoU > 0.3 (itself included)."""
    best = int(np.argmax(scores))
    group = _iou(boxes[best], boxes) > _NMS_IOU
    group[best] = True
    weights = scores[group] / scores[group].sum()
    return weights @ boxes[group], np.einsum("n,nkd->kd", weights, keypoints[group])[list(_DETECTION_EYES)]


def _weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, max_faces: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to `max_faces` detections of the weighted non-maximum suppression, best first: each the
    _weighted_nms_best of the detections that no earlier one absorbed."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    left = np.ones(len(scores), dtype=bool)
    while left.any() and len(out) < max_faces:
        idx = np.flatnonzero(left)
        best = idx[int(np.argmax(scores[idx]))]
        out.append(_weighted_nms_best(boxes[idx], keypoints[idx], scores[idx]))
        group = _iou(boxes[best], boxes) > _NMS_IOU
        group[best] = True
        left &= ~group
    return out
