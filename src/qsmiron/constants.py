"""Physical constants, named once for the whole package.

Susceptibilities are volume susceptibilities (SI, dimensionless) in ppm, relative to water
(and so, to a good approximation, to cerebrospinal fluid) unless a name says otherwise.
"""

#: Proton gyromagnetic ratio divided by 2*pi, in Hz/T (CODATA 2018).
GAMMA_HZ_PER_T: float = 42.577478518e6

#: Susceptibility of air relative to water, in ppm: chi_air = +0.36 ppm, chi_water = -9.05 ppm
#: (SI), difference about +9.4 ppm (Schenck, Med Phys 1996;23:815).
CHI_AIR_REL_WATER_PPM: float = 9.41
