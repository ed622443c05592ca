"""What the machine has, as plain data (facts.Hardware).

probe.detect() composes one small module per source: nvidia (NVML), apple (sysctl), amd (sysfs),
cpu (psutil, /proc/cpuinfo), disk, llama_build (the installed llama-cpp-python). profiles loads
hypothetical machines from profiles/hardware/*.json; resolve.hardware_for() picks between a
profile, manual sizes and the detected machine; advice turns facts into setup warnings.
replay holds recorded library answers for tests and bug reports.
"""
