"""What the tests share: ports, server processes, store servers, chart rendering, tmpfs disks."""
