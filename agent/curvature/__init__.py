"""Curvature: Hessian-vector products and λ_max, the GGN diagonal, α's fit."""
