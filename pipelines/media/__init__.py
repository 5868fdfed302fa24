"""What reads and writes video: probing, window decoding and staging segments, shot cuts, and writing a
video with its source's timing, audio and subtitles (PyAV / FFmpeg, PySceneDetect)."""
