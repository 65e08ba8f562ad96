/** The release of vpn, printed by `vpn version`. */
export const VERSION = "0.1.0";
