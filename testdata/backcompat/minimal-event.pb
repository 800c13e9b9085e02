
$6a1f0c2d-9e8b-4a7c-b6d5-e4f3a2b1c0d9ğóŞ©ÀŞœøsearch"	submitted