
oUserAlice Áà±‰∏Ω‰∏ù"	Guangdong*Shenzhen2CN:.https://thirdwx.qlogo.cn/mmopen/vi_32/Q0j4/132BchinaunicomJuAlicePÄÚ÷ 