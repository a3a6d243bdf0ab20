"""Unit conversions, used only at the edges (hippynn training works in angstrom and kcal/mol).

Everything public in openmm-cgnn speaks OpenMM's units: nm, ps, kJ/mol, K, bar, amu.
"""

KJ_PER_KCAL = 4.184
ANGSTROM_PER_NM = 10.0
AVOGADRO = 6.02214076e23
BOLTZMANN_KJ_PER_MOL_K = 0.00831446261815324  # k_B * N_A, kJ/(mol K)


def density_g_cm3(total_mass_amu: float, volume_nm3: float) -> float:
    """Mass density in g/cm^3 from a mass in amu and a volume in nm^3."""
    return total_mass_amu / AVOGADRO / (volume_nm3 * 1e-21)


def volume_for_density_nm3(total_mass_amu: float, density: float) -> float:
    """Box volume in nm^3 that holds ``total_mass_amu`` at ``density`` g/cm^3."""
    return total_mass_amu / AVOGADRO / density * 1e21
