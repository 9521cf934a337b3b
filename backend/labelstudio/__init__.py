"""Label Studio delivery: its API through label-studio-sdk, background push and batched prediction import."""
