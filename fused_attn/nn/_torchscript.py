"""TorchScript: refused with a message that says what to do instead."""


def refuse_torchscript(self):
    # torch.jit.script calls __prepare_scriptable__ on a module and on each of
    # its submodules before it compiles anything. The fused modules call
    # Python (argument checks, the choice of backend) that TorchScript cannot
    # compile; its own error would point into that code instead.
    raise RuntimeError(
        f"torch.jit.script cannot compile fused_attn.nn.{type(self).__name__}: its forward dispatches to the "
        "fused backends in Python. torch.export and torch.compile keep the fused ops. A model that "
        "fused_attn.convert converted scripts as fused_attn.unconvert(model, inplace=False)[0], a copy with the "
        "original modules back (their eager attention)")
