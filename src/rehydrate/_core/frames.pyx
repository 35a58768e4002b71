# cython: language_level=3
"""Records and frames: the writer's buffer and the replay scanner (native).

Twin of ``rehydrate._pure.frames``: its names, from the four modules that
implement them by role. A *record* is one logical op with one LSN; a
*frame* is the physical unit on disk (header + checksummed payload) and the
unit of atomicity.

- logbuffer: Staging and LogBuffer, the writer's buffer (check_table_name,
  MAX_BATCH_RECORD_BYTES);
- encoder: encode_frame;
- decoder: decode_payload (payload.h's faults as the twin's messages);
- scanner: FrameHeader, parse_frame_header, header_problem, ScanResult,
  SegmentContext and scan_frames, the replay loop.

They share inline helpers through _frameutil.pxd and cdef classes and
functions through each module's .pxd.
"""

from .decoder import decode_payload
from .encoder import encode_frame
from .logbuffer import MAX_BATCH_RECORD_BYTES, LogBuffer, Staging, check_table_name
from .scanner import (
    FrameHeader,
    ScanResult,
    SegmentContext,
    header_problem,
    parse_frame_header,
    scan_frames,
)
