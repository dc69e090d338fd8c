"""Quiet the libraries' own progress bars and notices while lowvram reports what it does."""


def quiet_library_logs() -> None:
    """lowvram reports loading itself; the libraries' own progress bars and notices only add noise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    quiet_torchao_import()


def quiet_torchao_import() -> None:
    """torchao (imported by diffusers' offload hooks once installed) warns about each optional CUDA extension its
    wheel lacks, torch about its enum registrations and diffusers that torchao's tensor types cannot be imported
    (its torchao quantizer, which lowvram does not use): set before the import, they stay quiet."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("diffusers.quantizers.torchao").setLevel(logging.ERROR)
