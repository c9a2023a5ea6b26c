"""Collection: read every GPU through NVML and the host through psutil, on a schedule, into samples."""
