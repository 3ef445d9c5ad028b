//! V4L2 camera capture.
