"""The modules of the first studies' trials, written by earlier versions of the generator: their sha256.

A trial's module is never taken from the study's storage as it is (`search.export.trial_module`): it is generated
again from the trial's design and must be, byte for byte, the module the trial stored. The committed studies
`studies/mnist.db` and `studies/ewc.db` were scored before the generator (or the space: most of mnist's designs
are of its first version) changed, so their modules cannot be generated again; each complete trial's module is
accepted when its sha256 is the one below for that study and trial, which the repository holds, not the storage.
Read from the committed files at commit acd1c2a (ewc) and ca4e45c (mnist).
"""

from __future__ import annotations

# study -> trial number -> sha256 of the module it stored.
LEGACY_MODULES: dict[str, dict[int, str]] = {
    "ewc": {
        0: "0624a191a273f9c9b78054086a8e49f4d22ce3c753880c111f8899104835a2e8",
        1: "744b55083f7e8c6032cae762074052251bbdbfb4c97c67ac2935f505f544d01b",
        2: "15f17f0c5a67d4a5addb3dbabd358b9f28a7681fc38e5a04508d87c2da0842c2",
        3: "3a03e7d22a2c42d88f0d321e0406a5eb30f4a28899cf1fce48e4fdf0318a3c34",
        4: "d45dbb083c3fc0a49d11124665ddd3b2e59c837c50409b2a7322df715de1a8e9",
        5: "00cf563c8f062edf260985a307540087197c35ad74988a18d071e49a3b42022c",
        6: "357d68442b0aaabdc93d5187c557482b87002fa5eb6471c628570819d93fa20b",
        7: "4c05a7149adcdf52b8e5a467719cca2a54fa639acc92a49d27ce3a4245c7abd6",
    },
    "mnist": {
        0: "8eb150ca140e2e2be0e93cb2014b2de8e6d145d460ce3a317da9e058ef8eb437",
        1: "34e01b4102f802907c3efb05bc780b616ca40eb8b421da6071d9fdd26ca3e8ee",
        2: "227a02453d8bbad12b1cc89f6f015293dacb15ceab93837a5cfa8a0dfffe6861",
        3: "b014e74ac1a0fd3c18d05b0aecff86890b721db32af71e89af1dfd417739bede",
        4: "6025fd7e7085ace322c0891d479527731e6003045ab7817bede7196c76ab9ba5",
        5: "e0479e82a27f6f0ff0d053add46d4ed32ccdd0e2711260dd3d3537dec5d79206",
        6: "2781c6375ecf8c213145aedd36a78e409a14e0567437e5660a37d6a9c7ce8df6",
        7: "ba7a78ca24196e2b3c4c366d193b0d4c4deafb9814e48e10d55e835fca650153",
    },
}
