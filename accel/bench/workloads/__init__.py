"""The bench's workloads, one module per family: embedding, occlusion, allocator, patch_scan, inspect, gpu, dashboard, jobs."""
