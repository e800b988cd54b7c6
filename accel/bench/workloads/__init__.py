"""The bench's workloads, one module per family: embedding, occlusion, rise, allocator, patch_scan, inspect, gpu, dashboard, jobs."""
