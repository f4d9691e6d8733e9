"""Saliency backends behind one interface (paper Sec. 3.1 uses DeepGaze IIE; its weights are not offline).

Each backend maps a BGR frame to a non-negative float32 map at a working resolution (`work_width`
pixels wide, the frame's aspect kept): croppers only need the map's mass distribution, and the static
OpenCV methods resize internally anyway (spectral residual works at 64x64), so full-resolution maps
would only cost time. A map without any mass (the first frames of motion saliency, a black frame)
becomes uniform, so its centroid is the frame centre rather than undefined.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence

import cv2
import numpy as np

from common.errors import UserError


class SaliencyModel(ABC):
    """Frame -> saliency map. Stateful backends (motion) are `reset()` before each clip."""

    name: str = "saliency"
    uses_color: bool = False  # grey backends get a grey working frame: converting before the resize is 6x cheaper

    def __init__(self, work_width: int = 160) -> None:
        if work_width < 16:
            raise UserError(f"saliency.work_width={work_width} must be >= 16 pixels")
        self.work_width = int(work_width)

    def reset(self) -> None:  # noqa: B027  (an optional hook: stateless backends keep this no-op)
        """Forget state from the previous clip."""

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """The frame at working width (grey unless the backend `uses_color`)."""
        if frame.ndim == 3 and not self.uses_color:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        height, width = frame.shape[:2]
        if width <= self.work_width:
            return frame
        return cv2.resize(frame, (self.work_width, max(1, round(height * self.work_width / width))), interpolation=cv2.INTER_AREA)

    @abstractmethod
    def _compute(self, small: np.ndarray) -> np.ndarray:
        """The raw map of a frame already at working size."""

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        small = self.resize(frame)
        raw = np.array(self._compute(small), dtype=np.float32)  # a private copy: cleaned in place below
        low, high = (small.min(), small.max()) if small.ndim == 3 else cv2.minMaxLoc(small)[:2]  # one pass on grey
        if low == high:  # a constant frame has no salient place (spectral residual returns noise)
            raw = np.zeros(small.shape[:2], np.float32)
        if raw.shape != small.shape[:2]:
            raw = cv2.resize(raw, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)
        np.nan_to_num(np.maximum(raw, 0.0, out=raw), copy=False)
        total = float(raw.sum())
        if total > 0:
            raw /= total
            return raw
        return np.full(raw.shape, 1.0 / raw.size, dtype=np.float32)

    def maps(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Maps of a clip's frames, (T, h, w), each summing to 1."""
        self.reset()
        return np.stack([self(frame) for frame in frames])


def _saliency_module():
    if not hasattr(cv2, "saliency"):
        raise UserError(
            "cv2.saliency is missing: install opencv-contrib-python-headless (the plain opencv-python wheel lacks it)"
        )
    return cv2.saliency


class SpectralResidualSaliency(SaliencyModel):
    """Hou & Zhang (CVPR 2007): log-spectrum minus its local average, back to the image domain."""

    name = "spectral_residual"

    def __init__(self, work_width: int = 160) -> None:
        super().__init__(work_width)
        self._model = _saliency_module().StaticSaliencySpectralResidual_create()

    def _compute(self, small: np.ndarray) -> np.ndarray:
        ok, saliency = self._model.computeSaliency(small)
        return saliency if ok else np.zeros(small.shape[:2], np.float32)


class FineGrainedSaliency(SaliencyModel):
    """Montabone & Soto (2010): centre-surround differences on integral images (OpenCV contrib)."""

    name = "fine_grained"

    def __init__(self, work_width: int = 160) -> None:
        super().__init__(work_width)
        self._model = _saliency_module().StaticSaliencyFineGrained_create()

    def _compute(self, small: np.ndarray) -> np.ndarray:
        ok, saliency = self._model.computeSaliency(small)
        return saliency if ok else np.zeros(small.shape[:2], np.float32)


class MotionSaliency(SaliencyModel):
    """Moving pixels are salient. `method=difference`: |frame - running-average background| (rate
    `background_rate`), blurred; informative from the second frame. `method=binwang`: OpenCV contrib's
    Wang & Dudek (2014) background subtraction, which marks every pixel as foreground for its first
    ~50 frames (treated here as no information) and so suits long clips only. Empty maps become
    uniform; `static_mix` blends in spectral residual so still scenes keep a meaningful centroid."""

    name = "motion"
    METHODS = ("difference", "binwang")

    def __init__(
        self, work_width: int = 160, static_mix: float = 0.0, method: str = "difference", background_rate: float = 0.1
    ) -> None:
        super().__init__(work_width)
        if not 0.0 <= static_mix <= 1.0:
            raise UserError(f"saliency.static_mix={static_mix} must be in [0, 1]")
        if method not in self.METHODS:
            raise UserError(f"saliency.method={method!r} must be one of {self.METHODS}")
        if not 0.0 < background_rate <= 1.0:
            raise UserError(f"saliency.background_rate={background_rate} must be in (0, 1]")
        self.static_mix, self.method, self.background_rate = float(static_mix), method, float(background_rate)
        self._static = SpectralResidualSaliency(work_width) if static_mix > 0 else None
        self.reset()

    def reset(self) -> None:
        self._model, self._background = None, None

    def _motion(self, gray: np.ndarray) -> np.ndarray:
        if self.method == "difference":
            if self._background is None or self._background.shape != gray.shape:
                self._background = gray.copy()
                return np.zeros_like(gray)
            motion = cv2.GaussianBlur(np.abs(gray - self._background), (0, 0), 1.5)
            self._background += self.background_rate * (gray - self._background)
            motion[motion < 0.1 * motion.max()] = 0.0  # keep the moving parts, not sensor noise
            return motion
        if self._model is None:
            self._model = _saliency_module().MotionSaliencyBinWangApr2014_create()
            self._model.setImagesize(gray.shape[1], gray.shape[0])
            self._model.init()
        ok, motion = self._model.computeSaliency(gray)  # needs float32 input; uint8 gives empty maps
        motion = np.asarray(motion, np.float32) if ok else np.zeros(gray.shape, np.float32)
        return np.zeros_like(motion) if motion.min() > 0 else motion  # all foreground = still learning

    def _compute(self, small: np.ndarray) -> np.ndarray:
        gray = (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small).astype(np.float32)
        motion = self._motion(gray)
        if self._static is None:
            return motion
        static = self._static(small)
        motion_total = float(motion.sum())
        motion = motion / motion_total if motion_total > 0 else np.zeros_like(motion)
        return (1 - self.static_mix) * motion + self.static_mix * static


class DeepGazeIIESaliency(SaliencyModel):
    """DeepGaze IIE (Linardos et al. 2021), the paper's backend: only when `deepgaze_pytorch` and its
    weights are installed (they need torchvision and a download, neither offline here)."""

    name = "deepgaze_iie"
    uses_color = True

    def __init__(self, work_width: int = 320, device: str = "cpu") -> None:
        super().__init__(work_width)
        if importlib.util.find_spec("deepgaze_pytorch") is None:
            raise UserError(
                "saliency=deepgaze needs the deepgaze_pytorch package and its weights "
                "(pip install git+https://github.com/matthias-k/DeepGaze, with torchvision); "
                "use saliency=spectral_residual offline"
            )
        import torch

        try:
            import deepgaze_pytorch

            self._model = deepgaze_pytorch.DeepGazeIIE(pretrained=True).to(device).eval()
        except Exception as exc:  # torchvision missing, weights not downloadable
            raise UserError(
                f"saliency=deepgaze: DeepGaze IIE could not be loaded ({exc.__class__.__name__}: {exc}); "
                "use saliency=spectral_residual"
            ) from None
        self._torch, self._device = torch, device

    def _compute(self, small: np.ndarray) -> np.ndarray:
        torch = self._torch
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32)
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self._device)
        centerbias = torch.zeros(1, *small.shape[:2], device=self._device)  # uniform log-density prior
        with torch.no_grad():
            log_density = self._model(image, centerbias)
        return log_density.exp()[0, 0].cpu().numpy()
