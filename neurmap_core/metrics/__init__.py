"""Image quality metrics: PSNR, SSIM, MS-SSIM, LPIPS-AlexNet (full-reference) and NIQE (no-reference).

Images are float tensors (B,3,H,W) in [0,1]; numpy HxWx3 arrays (uint8, or float in [0,1]) are accepted too.
``psnr`` and ``niqe`` return Python floats; ``ssim``, ``ms_ssim`` and ``lpips`` return differentiable
0-dim tensors (batch means); the ``*_per_image`` variants return one value per image.
"""
from .lpips import LPIPSAlex, load_lpips_alex, lpips, lpips_per_image
from .niqe import imresize_matlab, load_niqe_params, niqe, niqe_gray
from .psnr import psnr, psnr_per_image, quantize_8bit
from .ssim import ms_ssim, ms_ssim_per_image, ssim, ssim_per_image

__all__ = [
    "psnr", "psnr_per_image", "quantize_8bit",
    "ssim", "ssim_per_image", "ms_ssim", "ms_ssim_per_image",
    "lpips", "lpips_per_image", "LPIPSAlex", "load_lpips_alex",
    "niqe", "niqe_gray", "load_niqe_params", "imresize_matlab",
]
