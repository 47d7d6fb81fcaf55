"""The synthetic shapes world (`vl data demo`): images and videos of coloured shapes,
with questions, statements, captions and subtitles in each dataset's official format.

    scenes    colours, shapes, random streams, drawing a scene
    language  VQA / GQA questions, captions, NLVR2 statements about a scene
    videos    moving-shape videos (reproducible MP4), VALUE questions, descriptions, subtitles
    world     planning the whole world and writing it (write_demo_world)
"""
from vl.data_manifests.demo.world import DemoWorld, convert_commands, write_demo_world

__all__ = ["DemoWorld", "convert_commands", "write_demo_world"]
