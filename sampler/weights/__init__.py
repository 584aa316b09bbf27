"""The weight transport: one round trip from the trainer's parameters to the weights a vLLM
worker serves. Read it in this order:

Both sides:
    wire.py              the bucket layout and meta: what travels, byte for byte
    buckets.py           the one bucketing rule (whole layers per bucket), used by every sender
                         and by the trainer's ZeRO-3 gathers
    group.py             the standalone process group per replica (rank 0 = trainer), handshake
Trainer side (sender):
    sender.py            `make_weight_pusher`: the trainer's one import point
    sender_base.py       what a pusher is; a push that reached no replica
    sender_dist.py       gloo/nccl: sessions, the replica's update request, rendezvous
    sender_stream.py     the bucket-by-bucket broadcast to every replica at once
    sender_files.py      the filesystem transport (safetensors shards)
vLLM side (receiver):
    receiver.py          the vLLM worker extension (`worker_extension_cls`): join, receive, load
    receiver_stream.py   reading buckets off the group one ahead of vLLM's loader
    receiver_buffers.py  the bounded receive buffers
    receiver_reload.py   refusing a reload that left any weight on its old value
    rpc.py               worker methods that return their error through `collective_rpc`

The trainer imports `sender` (and `buckets`); the sampler's server imports `rpc` and names
`receiver.WeightSyncExtension` to vLLM. Nothing here imports the trainer. This file imports
nothing, so a vLLM worker loading the receiver does not load the trainer side.
"""
