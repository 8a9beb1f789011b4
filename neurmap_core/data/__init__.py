"""Data for NeurMAP: image/video reading, blur synthesis, joint transforms and torch Datasets.

Images are float32 RGB (3,H,W) tensors in [0, 1]; motion maps are (2,H,W), channels (dy, dx) in pixels/20.
"""
from .datasets import KernelBlurred, PairedFolder, SynthesizedGoPro, UnpairedFolder, VideoFlowMotion, WeightedMix
from .io import (
    IMAGE_EXTENSIONS,
    array_to_tensor,
    is_image_file,
    list_images,
    natural_key,
    read_image,
    tensor_to_array,
    write_image,
)
from .photos import PhotoPairs, photo_shake_videos, photo_split
from .synthesis import (
    GoProPairs,
    affine_blur_motion,
    camera_shake_clip,
    gopro_blur,
    gopro_pair,
    gopro_pairs_from_folder,
    kernel_blur,
    linear_to_srgb,
    random_motion_field,
    srgb_to_linear,
    window_motion,
)
from .transforms import OFFICIAL_SIZE, RandomCropFlip, hflip, pad_sample, pad_to, resize_sample
from .video import (
    VIDEO_EXTENSIONS,
    FrameSequence,
    ImageFolderFrames,
    SingleImageFrames,
    VideoReader,
    frame_source,
    is_video_file,
)

__all__ = [
    "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "OFFICIAL_SIZE",
    "read_image", "write_image", "list_images", "natural_key", "is_image_file", "array_to_tensor", "tensor_to_array",
    "FrameSequence", "ImageFolderFrames", "SingleImageFrames", "VideoReader", "frame_source", "is_video_file",
    "srgb_to_linear", "linear_to_srgb", "gopro_blur", "gopro_pair", "gopro_pairs_from_folder", "GoProPairs",
    "random_motion_field", "kernel_blur", "camera_shake_clip", "affine_blur_motion", "window_motion",
    "RandomCropFlip", "hflip", "pad_to", "pad_sample", "resize_sample",
    "PairedFolder", "UnpairedFolder", "SynthesizedGoPro", "KernelBlurred", "VideoFlowMotion", "WeightedMix",
    "PhotoPairs", "photo_split", "photo_shake_videos",
]
