"""Planning: suites of tasks, planners behind one interface, costs as terms, and the MPC loop that runs them.

Modules, from the bottom up: ``cem`` and ``ilqr`` (optimizers that know nothing of images), ``costs`` (terms
over rollouts), ``tracking`` (where designated pixels are after executing), ``suites`` (tasks and judging),
``video`` / ``latent`` / ``oracle`` (where rollouts come from), ``planners`` (the planners), ``mpc`` (the loop).
"""
