"""The aiohttp side of the kernel: ``app.make_app`` (the factory), ``keys`` (typed app/request keys),
``middlewares``, ``gateway`` (the parse -> route -> provider -> render pipeline), ``streaming`` and
``runner`` (listening and graceful shutdown). Import the submodules directly."""
