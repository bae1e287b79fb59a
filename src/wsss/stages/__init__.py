"""Pipeline stages: one module per stage, each with ``run(ctx)`` and ``is_complete(ctx)``.

Stages hand over through files in one run directory (see ``wsss.stages.context.RunPaths``),
so any stage can be re-run, inspected, resumed or sharded on its own.
"""
